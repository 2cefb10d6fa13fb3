"""Meta-nets that weight or rectify each training sample's loss."""
