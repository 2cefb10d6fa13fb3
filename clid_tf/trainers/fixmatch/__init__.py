"""FixMatch and FlexMatch with a loss-net trained by CLID."""
