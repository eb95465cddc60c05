"""The audio front end (log-mel), preprocessing audio folders into shards, the shard format."""
