// Tests of the Probing layer.
