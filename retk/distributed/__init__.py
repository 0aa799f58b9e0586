"""Scale-out on Ray: sharded, resumable index builds and query encoding on a cluster.

Install with ``pip install 'retk[distributed]'``; Ray is imported only when a
build or an encoding starts.
"""

from retk.distributed.queries import RayQueryEncoder, encode_queries_ray, encode_texts_ray
from retk.distributed.ray_build import build_index_ray, default_work_folder, ray_build, ray_session
from retk.distributed.shards import DEFAULT_SHARD_DOCUMENTS, Shard, ShardStore, plan_shards

__all__ = [
    "DEFAULT_SHARD_DOCUMENTS",
    "RayQueryEncoder",
    "Shard",
    "ShardStore",
    "build_index_ray",
    "default_work_folder",
    "encode_queries_ray",
    "encode_texts_ray",
    "plan_shards",
    "ray_build",
    "ray_session",
]
