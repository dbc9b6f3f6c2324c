"""Reference profiles: what the model saw in training, built offline and read at start-up.

The profile document and its reader and writer (`document`), the builder (`builder`) and the
training-table readers (`tables`). This package holds modeltap's file I/O for profiles; the online
statistics (`modeltap.stats`) only consume the parsed `ReferenceProfile`.

Example::

    from modeltap import build_profile, write_profile, load_reference

    write_profile(build_profile(train_df, prediction="prediction"), "reference.json")
    profile = load_reference("reference.json")
"""

from modeltap.reference.builder import build_profile, numeric_profile_document
from modeltap.reference.document import (
    ReferenceFeature,
    ReferenceProfile,
    canonical_category,
    load_reference,
    parse_reference,
    write_profile,
)
from modeltap.reference.tables import profile_table, read_table

__all__ = [
    "ReferenceFeature",
    "ReferenceProfile",
    "build_profile",
    "canonical_category",
    "load_reference",
    "numeric_profile_document",
    "parse_reference",
    "profile_table",
    "read_table",
    "write_profile",
]
