from shardctl.cli import main

raise SystemExit(main())
