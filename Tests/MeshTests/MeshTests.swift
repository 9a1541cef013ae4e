// Tests of the Mesh layer.
