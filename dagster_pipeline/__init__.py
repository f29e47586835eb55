"""feedrank's Dagster code location (definitions in dagster_pipeline.definitions)."""
