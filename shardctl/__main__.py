from shardctl.simclock import install_from_env

install_from_env()  # end-to-end tests only: SHARDCTL_SIMULATED_CLOCK

from shardctl.cli import main  # noqa: E402

raise SystemExit(main())
