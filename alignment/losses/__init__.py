"""Pure loss and advantage functions (no Ray, no models)."""
