"""The options that put an index on Ray, written once for every face that has them (`fastret
search`, `fastret eval`, `fastret serve`): their help texts; fastret.search.searchers.open_searchable
takes them as `ray_address`, `shards` and `replicas`."""

RAY_ADDRESS_HELP = ("search the index on the Ray cluster at ADDRESS (e.g. 10.0.0.1:6379, or auto): its files are "
                    "spread over the nodes as shards (needs fastret[distributed])")
SHARDS_HELP = ("shards (Ray actors) to spread the index's files over; without --ray, on a local Ray started "
               "for this command (default with --ray: one per node)")
REPLICAS_HELP = "actors per shard (with --ray or --shards)"
