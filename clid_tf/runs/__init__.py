"""The run folder, callbacks, TensorBoard views and SavedModel export."""
