"""Built-in dyme verifiers, registered through the `dyme.verifiers` entry-point group."""
