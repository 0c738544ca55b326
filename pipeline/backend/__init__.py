"""The Ray backend: the only code that talks to Ray Data (datasource, datasink, map_batches)."""
