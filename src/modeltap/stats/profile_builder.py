"""Deprecated import path: moved to `modeltap.reference.builder` (public: `modeltap.reference`).

Kept for one release; importing it warns.
"""

import sys
import warnings

from modeltap.reference import builder as _moved

warnings.warn(
    f"{__name__} moved to modeltap.reference.builder; public names are in modeltap.reference "
    "(build_profile, write_profile and load_reference also in modeltap). The old path goes away "
    "in the next release.",
    DeprecationWarning,
    stacklevel=2,
)
sys.modules[__name__] = _moved
