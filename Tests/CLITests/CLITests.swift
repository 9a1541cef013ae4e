// Tests of the CLI layer.
