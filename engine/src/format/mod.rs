//! Kafka's `__consumer_offsets` record format: key/value schemas and RecordBatch v2 framing.
