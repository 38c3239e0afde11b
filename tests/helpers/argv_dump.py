"""Write the arguments this script received, as JSON, to the file named first."""

import json
import sys

with open(sys.argv[1], "w") as f:
    json.dump(sys.argv[2:], f)
