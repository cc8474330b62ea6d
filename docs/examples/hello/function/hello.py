from qiskit_serverless import get_arguments, get_logger, save_result

arguments = get_arguments()
name = arguments.get("name", "world")
get_logger().info("saying hello to %s", name)
save_result({"message": f"Hello, {name}!"})
