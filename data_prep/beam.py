"""`--runner=beam`: the same per-video function as an Apache Beam pipeline.

    (shard index, item) → process_video → GroupByKey(shard index) → write_shard

Each element is one video (`process.process_video`, the function the local runner calls); videos
are grouped back into the shards planned by `shards.plan_shards` and each group is written with
`shards.write_shard` (sorted by video_id inside the shard). Grouping is therefore the SAME as the
local runner's, and the shards and manifest are byte-identical to a local run (tested with the
DirectRunner). The driver (`prepare.prepare`, which imports this module; this module does not
import it) writes the manifest from the shard summaries after the pipeline ends, and skips shards
already complete, so Beam runs resume too.

Pipeline options come from `--beam_args` (default: DirectRunner, in-memory). Video files must be
readable by the workers under the same paths and `--out` writable by them (tf.io.gfile paths,
so gs:// works for the output on Dataflow). TFDS sources are not supported with Beam (their frames
are streamed by the local runner).
"""

from __future__ import annotations

from typing import Sequence

from data_prep import process
from data_prep import shards
from data_prep import sources


def _process(element, options):
  shard_index, item = element
  return shard_index, process.process_video(item, options)


def _write(element, out_dir, specs):
  shard_index, results = element
  return shards.write_shard(out_dir, specs[shard_index], list(results))["filename"]


def run_beam(out_dir: str, specs: Sequence[shards.ShardSpec], options) -> None:
  """Processes and writes `specs` (pending shards) with a Beam pipeline built from options."""
  import apache_beam as beam  # pylint: disable=g-import-not-at-top
  from apache_beam.options import pipeline_options  # pylint: disable=g-import-not-at-top
  if any(sources.is_tfds_item(item) for spec in specs for item in spec.items):
    raise ValueError("--runner=beam does not support --dataset=tfds; use --runner=local")
  specs = list(specs)
  elements = [(index, item) for index, spec in enumerate(specs) for item in spec.items]
  with beam.Pipeline(
      options=pipeline_options.PipelineOptions(list(options.beam_args))) as pipeline:
    _ = (pipeline
         | "Videos" >> beam.Create(elements)
         | "Spread" >> beam.Reshuffle()
         | "ProcessVideo" >> beam.Map(_process, options)
         | "GroupByShard" >> beam.GroupByKey()
         | "WriteShard" >> beam.Map(_write, out_dir, specs))
