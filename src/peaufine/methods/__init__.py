"""Methods: objectives that turn a batch into a loss; the engine knows nothing else about them."""
