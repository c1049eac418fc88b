from pipeline.io import logged
from pipeline.stages import visualize

with logged(snakemake.log[0]):
    inputs = {k: snakemake.input[k] for k in ("normalized", "crops", "reports")}
    visualize.run(inputs, {"baseline": snakemake.input.baseline, "student": snakemake.input.student},
                  snakemake.params.architectures, snakemake.output[0], snakemake.params.truth or None,
                  split=snakemake.params.split)
