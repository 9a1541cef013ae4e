// Tests of the Steering layer.
