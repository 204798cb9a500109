"""The etcd adapter: ``etcd`` (the only module that imports aetcd), ``codec`` (values), ``base`` (the narrow
protocols each consumer depends on)."""
