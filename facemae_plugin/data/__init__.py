"""Pixels for torch: the shard as a dataset, and the synthetic faces the project makes its own data from."""
