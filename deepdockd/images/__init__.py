"""Images: the image service (``service``), Docker's reference grammar (``references``), which
registries pulls may reach (``registries``) and the record of private images (``records``)."""
