# S3 fixtures (s3_endpoint, s3_server): a real moto S3 server on 127.0.0.1, see conftest_s3.py.
from conftest_s3 import s3_endpoint, s3_server  # noqa: F401
