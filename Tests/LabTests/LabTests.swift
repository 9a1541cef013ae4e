// Tests of the Lab layer.
