"""``shardctl audit``: for every symbol and every minute of a window, what the database holds and why.

    classify.py   the classes and the rules, pure functions over one symbol's facts
    readout.py    the facts from the database, set-based (candles, then index probes for the rest)
    online.py     Twelve Data's ``time_series`` for the minutes without a tick (``--online``)
    render.py     text, JSON and the HTML heatmap
    run.py        one audit end to end, for the command and the supervisor's schedule
    cli.py        the command
"""
