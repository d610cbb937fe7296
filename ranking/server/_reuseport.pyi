"""Type stub for the workers' connection balancer (ranking/server/_reuseport.c)."""

def load(workers: int) -> tuple[int, int]:
    """The round-robin SK_REUSEPORT program over `workers` slots and its socket map:
    (program fd, socket map fd). OSError (with errno) when the kernel refuses either."""

def join(sock: int, index: int, program: int, sockets: int) -> None:
    """Put listening socket `sock` into slot `index` of `sockets` and attach `program` to the
    socket's SO_REUSEPORT group. OSError (with errno) when the kernel refuses."""
