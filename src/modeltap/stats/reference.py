"""Deprecated import path: moved to `modeltap.reference.document` (public: `modeltap.reference`).

Kept for one release; importing it warns.
"""

import sys
import warnings

from modeltap.reference import document as _moved

warnings.warn(
    f"{__name__} moved to modeltap.reference.document; public names are in modeltap.reference "
    "(build_profile, write_profile and load_reference also in modeltap). The old path goes away "
    "in the next release.",
    DeprecationWarning,
    stacklevel=2,
)
sys.modules[__name__] = _moved
