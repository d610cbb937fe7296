"""The grpc.aio transport: servicers, converters, error mapping, lifecycle and workers."""
