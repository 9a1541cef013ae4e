// Tests of the Model layer.
