import sys

from dcnr_operator.main import main

sys.exit(main())
