"""CenterNet keypoint-triplet detector (ResNet-18) with a batched ROS 2 node.

The core modules in this package never import rclpy; the ROS layer lives in
`centernet_ros.ros`. Importing this package is cheap: it imports neither torch nor rclpy.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
