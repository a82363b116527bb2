from opendt.cli import main

raise SystemExit(main())
