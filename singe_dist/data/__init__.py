"""Data: the bundled digits set and ImageNet-style webdataset shards."""
