"""The contract between host and plugins: API types, hook specs, suite/cell config, registries, the plugin host."""
