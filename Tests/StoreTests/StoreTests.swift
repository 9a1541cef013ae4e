// Tests of the Store layer.
