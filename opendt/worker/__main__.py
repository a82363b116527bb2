from opendt.worker.child import main

raise SystemExit(main())
