"""`python -m dataset_adapters.synthetic ROOT --format coco ...`"""
from dataset_adapters.synthetic import main

main()
