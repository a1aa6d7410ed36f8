from obert.cli import main

raise SystemExit(main())
