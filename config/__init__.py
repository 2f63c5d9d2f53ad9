"""The example configs, shipped inside the wheel as the package ``shardctl.examples``.

``demo.toml`` is what ``shardctl demo`` runs (and the README's quick start);
``starter.toml`` is what ``shardctl init`` writes; ``prod.toml`` is a
production example. The code reads them with ``importlib.resources``
(``shardctl.config.starter``); from a clone, read or copy them directly.
"""
