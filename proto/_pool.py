"""Ensign's private protobuf descriptor pool for the package-less Workload API proto.

The SPIFFE Workload API proto declares no package, so its message names (X509SVIDRequest, ...)
are global. Client libraries vendor the same file (py-spiffe does), and two copies in protobuf's
default pool refuse to load in one process. Loading ours here keeps the daemon and any client
library importable side by side.
"""

from google.protobuf import descriptor_pool, struct_pb2

POOL = descriptor_pool.DescriptorPool()
POOL.AddSerializedFile(struct_pb2.DESCRIPTOR.serialized_pb)
