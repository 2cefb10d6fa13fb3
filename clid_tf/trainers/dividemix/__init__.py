"""DivideMix with two networks, optionally VRI rectifiers trained by CLID."""
