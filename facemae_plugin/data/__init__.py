"""Datasets as a whole: the shard as a torch dataset, the synthetic faces the project makes its own
data from, image folders and pairs lists to and from shards, and splits by identity."""
