"""Start the CenterNet detector node.

    ros2 launch centernet_ros detect.launch.py
    ros2 launch centernet_ros detect.launch.py camera_topics:='[cam0/image_raw, cam1/image_raw]' device:=cuda
    ros2 launch centernet_ros detect.launch.py params_file:=/path/to/my.yaml score_threshold:=0.4
    ros2 launch centernet_ros detect.launch.py namespace:=robot1 log_level:=debug

Every parameter comes from ``params_file`` (default: the package's config/detect.yaml); a launch
argument given on the command line overrides that one parameter, an argument left empty ('') keeps
the file's value. The default topics are relative (camera/image_raw -> camera/detections,
label_info), so ``namespace`` moves them all. ``log_level`` sets the level of the node's own logger
only (``--log-level <namespace>.<node_name>:=<level>``), not that of rcl and the middleware.
``fastdds_profile`` (default ``auto``) gives the node the package's Fast DDS profile for large frames
between processes (config/fastdds_large_frames.xml, unless FASTDDS_DEFAULT_PROFILES_FILE or
FASTRTPS_DEFAULT_PROFILES_FILE is set), another profile's path, or none ('').
"""
import yaml
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

from centernet_ros.ros.fastdds import LAUNCH_ARGUMENT_HELP, launch_argument_env
from centernet_ros.ros.package_files import PACKAGE, package_file

LOG_LEVELS = ('debug', 'info', 'warn', 'error', 'fatal')

# launch argument (= node parameter) -> (type, description)
OVERRIDES = {
    'weights': (str, 'model file (.safetensors)'),
    'device': (str, 'auto | cpu | cuda | cuda:N'),
    'input_size': ([int], 'network input [H, W], multiples of 32; [0, 0] = the size stored in the model'),
    'fp16': (bool, 'half-precision forward pass on CUDA'),
    'compile': (bool, 'CUDA graphs through torch.compile (CUDA only)'),
    'backend': (str, 'forward pass: auto (onnxruntime on CPU when installed) | torch | onnxruntime | onnxruntime-int8'),
    'int8_model': (str, 'backend onnxruntime-int8: the INT8 .onnx file (centernet-export --int8)'),
    'cpu_threads': (int, 'torch / onnxruntime threads on CPU: -1 = all cores but one, 0 = library default'),
    'camera_topics': ([str], 'camera topics, e.g. "[cam0/image_raw, cam1/image_raw/compressed]"'),
    'transports': ([str], 'auto | raw | compressed, one for all topics or one per topic'),
    'detections_topics': ([str], '[auto] (= <camera ns>/detections) or one topic per camera'),
    'qos_reliability': (str, 'camera subscriptions: best_effort | reliable'),
    'score_threshold': (float, 'publish detections with score > this, in [0, 1)'),
    'ae_threshold': (float, 'max embedding distance of a corner pair'),
    'decode_mode': (str, 'triplet | pairs'),
    'exclusive_centres': (bool, 'a centre keypoint that confirms a better box nested in a box does not confirm '
                                'that box (false: the paper\'s rule)'),
    'size_ratio': (float, 'a centre keypoint confirms a box only if its width and height are within this factor of '
                          'the size the centre predicts (models with ct_size); 0 = off'),
    'group_score_ratio': (float, 'drop a box that encloses two distinct detections of its class, each scoring at '
                                 'least this times its score; 0 = off'),
    'flip_test': (bool, 'also run every frame flipped left-right and merge both views (the paper\'s test; '
                        'twice the forward-pass work)'),
    'nms_method': (str, 'soft | soft_linear | hard | none'),
    'nms_sigma': (float, 'Gaussian soft-NMS sigma'),
    'nms_iou': (float, 'IoU threshold of hard / linear soft NMS'),
    'max_detections': (int, 'most detections per image'),
    'max_batch_size': (int, 'most camera frames in one forward pass'),
    'max_batch_latency_ms': (float, 'longest wait for more cameras after the first pending frame'),
}


# what an empty launch argument means, where it says more than "from params_file"
EMPTY = {'weights': 'from params_file (config/detect.yaml: the bundled models/centernet_vehicles.safetensors)'}


def _convert(name, text):
    """A launch argument string -> the parameter's type (raises ValueError naming the argument)."""
    kind, _ = OVERRIDES[name]
    try:
        if isinstance(kind, list):
            value = yaml.safe_load(text)
            items = value if isinstance(value, list) else [value]
            if not items:
                raise ValueError('empty list')
            return [kind[0](v) for v in items]
        if kind is bool:
            value = yaml.safe_load(text)
            if not isinstance(value, bool):
                raise ValueError('not true/false')
            return value
        if kind is str:
            return ParameterValue(text, value_type=str)  # never re-read as YAML ('cuda:0', 'none', ...)
        return kind(text)
    except (ValueError, TypeError, yaml.YAMLError) as exc:
        raise ValueError(f'launch argument {name}:={text!r}: {exc}') from None


def node_logger_name(namespace, node_name):
    """The name of a node's logger: ``/robot1`` + ``centernet_detector`` -> ``robot1.centernet_detector``."""
    parts = [p for p in namespace.split('/') if p] + [node_name]
    return '.'.join(parts)


def _launch_node(context):
    node_name = LaunchConfiguration('node_name').perform(context)
    namespace = LaunchConfiguration('namespace').perform(context)
    log_level = LaunchConfiguration('log_level').perform(context).lower()
    if log_level not in LOG_LEVELS:
        raise ValueError(f'launch argument log_level:={log_level!r}: expected one of {", ".join(LOG_LEVELS)}')
    overrides = {}
    for name in OVERRIDES:
        text = LaunchConfiguration(name).perform(context)
        if text != '':
            overrides[name] = _convert(name, text)
    parameters = [LaunchConfiguration('params_file').perform(context)]
    if overrides:
        parameters.append(overrides)
    return [
        Node(
            package=PACKAGE,
            executable='centernet-detector',
            name=node_name,
            namespace=namespace,
            parameters=parameters,
            ros_arguments=['--log-level', f'{node_logger_name(namespace, node_name)}:={log_level}'],
            additional_env=launch_argument_env(context),
            output='screen',
            emulate_tty=True,
        )
    ]


def generate_launch_description():
    args = [
        DeclareLaunchArgument('params_file', default_value=str(package_file('config', 'detect.yaml')),
                              description='ROS parameters file of the node'),
        DeclareLaunchArgument('node_name', default_value='centernet_detector', description='node name'),
        DeclareLaunchArgument('namespace', default_value='', description='node namespace'),
        DeclareLaunchArgument('log_level', default_value='info',
                              description='level of the node\'s logger: debug | info | warn | error | fatal'),
        DeclareLaunchArgument('fastdds_profile', default_value='auto', description=LAUNCH_ARGUMENT_HELP),
    ]
    args += [
        DeclareLaunchArgument(name, default_value='', description=f'{text}; empty: {EMPTY.get(name, "from params_file")}')
        for name, (_, text) in OVERRIDES.items()
    ]
    return LaunchDescription(args + [OpaqueFunction(function=_launch_node)])
