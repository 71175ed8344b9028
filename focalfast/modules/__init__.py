"""nn.Modules built on the ops."""
