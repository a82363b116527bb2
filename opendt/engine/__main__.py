from opendt.engine.cli import main

raise SystemExit(main())
