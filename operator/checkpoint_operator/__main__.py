from checkpoint_operator.cli import main

raise SystemExit(main())
