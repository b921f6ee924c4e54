"""Plugin sequential recommenders; each file holds one model and is registered in ``registry.PLUGIN_MODELS``."""
