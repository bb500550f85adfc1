"""The federated setting (SPEC "Setting", "Data", "Evaluation and accounting"): what every algorithm shares.

  data, download, data_checksums   Fashion-MNIST / MNIST IDX files -> arrays; `DATASETS` registry
  partition, partition_report      node shards (Dirichlet, IID, the NTK-DFL files) as padded `NodeData`
  topology                         graphs per round -> padded neighbour indices and mixing weights
  models                           the `MODELS` registry (MLP, CNN; the structured fast-path capability)
  metrics, losses, comm            evaluation, losses, bytes on the wire
"""
