-- One server, one database per service: MLflow's tracking store and Airflow's metadata DB.
CREATE DATABASE mlflow;
CREATE DATABASE airflow;
