// Tests of the Routing layer.
