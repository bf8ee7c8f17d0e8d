"""Domain packs: discovery, loading, validation and scaffolding."""

from sdk.packs.loader import ENTRY_POINT_GROUP, Pack, discover_packs, load_pack_dir, resolve_pack

__all__ = ["ENTRY_POINT_GROUP", "Pack", "discover_packs", "load_pack_dir", "resolve_pack"]
